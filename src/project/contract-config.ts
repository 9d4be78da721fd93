import { z } from 'zod';
import type { ConfigIssue } from '../errors.js';
import type { YamlFile } from './yaml-file.js';

/**
 * Schema contracts (dlt's): what a model's output may do beyond its declared columns. A column
 * the declaration lacks is a `new_column`; a value that does not cast (losslessly) to its
 * column's declared type is a `type_change`. Each has a policy: evolve (accept: the schema
 * grows or the type widens), freeze (the message goes to the DLQ), discard_row (the row is
 * dropped), discard_value (the value is dropped: NULL, or the new column left out).
 */
export const CONTRACT_POLICIES = ['evolve', 'freeze', 'discard_row', 'discard_value'] as const;
export type ContractPolicy = (typeof CONTRACT_POLICIES)[number];
export type ContractKind = 'new_column' | 'type_change';

const policySchema = z.enum(CONTRACT_POLICIES);

export const contractSchema = z
  .object({
    new_columns: policySchema
      .optional()
      .describe(
        'a column the model outputs that `columns:` does not declare: evolve (kept; default), freeze (its message goes to the DLQ), discard_row (the row is dropped), discard_value (the column is left out)',
      ),
    type_changes: policySchema
      .optional()
      .describe(
        "a value that does not cast to its column's declared `type:`: evolve (the column's type widens; default), freeze (its message goes to the DLQ), discard_row (the row is dropped), discard_value (the value becomes NULL)",
      ),
  })
  .strict();

export const columnTypeSchema = z.string().min(1).describe("the column's DuckDB type (BIGINT, VARCHAR, DOUBLE, BOOLEAN, TIMESTAMP, DECIMAL(10,2), ...): the model's output is cast to it");

export interface ColumnType {
  name: string;
  type: string;
}

export interface DeclaredColumn {
  name: string;
  /** DuckDB's own name for the declared type once resolved (see resolveContractTypes). */
  type?: string;
  file?: string;
  line?: number;
}

export interface ModelContract {
  columns: DeclaredColumn[];
  newColumns: ContractPolicy;
  typeChanges: ContractPolicy;
  file?: string;
  line?: number;
}

/**
 * The contract of a model from its overrides block, or undefined when there is nothing to
 * enforce (no `contract:` and no typed column): such a model costs its batches nothing.
 */
export function modelContract(
  model: string,
  o: { columns?: { name: string; type?: string }[]; contract?: z.output<typeof contractSchema> },
  y: YamlFile | undefined,
  issues: ConfigIssue[],
): ModelContract | undefined {
  const columns = o.columns ?? [];
  if (!o.contract && !columns.some((c) => c.type)) return undefined;
  const at = (keyPath: (string | number)[]) => ({ file: y?.file ?? 'config/models.yml', line: y?.lineOf(['overrides', model, ...keyPath]), key: ['overrides', model, ...keyPath].join('.') });
  const c: ModelContract = {
    columns: columns.map((col, i) => ({ name: col.name, type: col.type, ...at(['columns', i]) })),
    newColumns: o.contract?.new_columns ?? 'evolve',
    typeChanges: o.contract?.type_changes ?? 'evolve',
    ...(o.contract ? at(o.contract.new_columns ? ['contract', 'new_columns'] : ['contract']) : {}),
  };
  if (c.newColumns !== 'evolve' && columns.length === 0) {
    issues.push({ ...at(['contract', 'new_columns']), message: `new_columns: ${c.newColumns} needs the model's columns declared under overrides.${model}.columns (name, type)` });
  }
  if (o.contract?.type_changes && !columns.some((col) => col.type)) {
    issues.push({ ...at(['contract', 'type_changes']), message: `type_changes applies to columns with a \`type:\`; model ${model} declares none` });
  }
  const seen = new Set<string>();
  columns.forEach((col, i) => {
    const k = col.name.toLowerCase();
    if (seen.has(k)) issues.push({ ...at(['columns', i, 'name']), message: `column "${col.name}" is declared twice` });
    seen.add(k);
  });
  return c;
}
