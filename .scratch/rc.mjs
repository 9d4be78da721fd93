import { DuckDBInstance } from '@duckdb/node-api';
const c = await (await DuckDBInstance.create(':memory:')).connect();
const r = await c.run('CREATE TABLE t AS SELECT range AS x FROM range(10)');
console.log(r.rowsChanged, r.returnType, r.statementType);
const r2 = await c.run('INSERT INTO t SELECT range FROM range(5)');
console.log(r2.rowsChanged);
