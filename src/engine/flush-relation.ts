import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError } from '../errors.js';
import type { SinkWrite } from '../connectors/types.js';
import { MESSAGE_COL, MSG_COL, ROW_COL } from '../sql/analyze.js';
import { fileList } from '../sql/quote.js';

/** The engine's columns of a flush's relation (SinkWrite.order). */
export const FLUSH_ORDER: SinkWrite['order'] = Object.freeze({ row: ROW_COL, message: MESSAGE_COL });

/** Numbers the views of this process: names never repeat, whatever flushes run at once. */
let views = 0;

/** A flush's rows made ready for its sinks, and how to let go of them once every sink is done. */
export interface PreparedFlush {
  write: SinkWrite;
  release(): Promise<void>;
}

/**
 * Makes a flush's WAL segments (Parquet files, in staging order) a temporary view on `conn`
 * (visible to that connection only) holding the model's columns — matched by name across the
 * segments, NULL where a batch lacked one — and the engine's columns of SinkWrite.order:
 * `row` = (segment's position << 40) + row within the segment, `message` = (segment's
 * position << 32) + the message's index in its batch. Both are computed only when a query
 * selects them; a sink reading the model's columns scans the segments as a direct read would.
 * `release` drops the view.
 */
export async function prepareFlush(conn: DuckDBConnection, flush: { model: string; name: string; files: string[] }): Promise<PreparedFlush> {
  const view = `__sluice_rows_${process.pid}_${++views}`;
  const { row, message } = FLUSH_ORDER;
  await conn.run(
    `CREATE TEMP VIEW ${view} AS SELECT * EXCLUDE (${MSG_COL}), (file_index::BIGINT << 32) + ${MSG_COL} AS ${message},
       (file_index::BIGINT << 40) + file_row_number AS ${row} FROM read_parquet(${fileList(flush.files)}, union_by_name = true)`,
  );
  const release = async () => {
    await conn.run(`DROP VIEW IF EXISTS ${view}`);
  };
  try {
    const described = (await conn.runAndReadAll(`DESCRIBE ${view}`)).getRows().map((r) => ({ name: String(r[0]), type: String(r[1]) }));
    const columns = described.slice(0, -2);
    // A model column of an engine column's name would shadow it (DuckDB renames the later one).
    const clash = columns.find((c) => c.name === row || c.name === message);
    if (clash) {
      throw new SluiceError('SINK', `model ${flush.model} has a column named ${clash.name}, a name sluice keeps for its own use; rename it in the model's SELECT`, { permanent: true });
    }
    const counted = await conn.runAndReadAll(`SELECT count(*) FROM ${view}`);
    const write: SinkWrite = { model: flush.model, name: flush.name, rows: Number(counted.getRows()[0][0]), relation: view, columns, order: FLUSH_ORDER };
    return { write, release };
  } catch (err) {
    await release().catch(() => {});
    throw err;
  }
}
