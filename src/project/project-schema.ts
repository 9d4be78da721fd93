import { z } from 'zod';
import { columnTypeSchema, contractSchema } from './contract-config.js';
import { durationSchema } from './duration.js';
import { columnTestSchema, modelTestSchema, referenceSchema } from './data-test-config.js';

// The schemas of sluice.yml and config/models.yml, and the defaults of what they leave out.

const columnDocSchema = z
  .object({
    name: z.string().min(1).describe('the column as the model outputs it'),
    description: z.string().optional().describe('what the column holds (shown by `sluice docs`)'),
    type: columnTypeSchema.optional(),
    tests: z.array(columnTestSchema).optional().describe('data tests: not_null, unique, accepted_values, range, regex, relationships'),
  })
  .strict();

export const projectSchema = z
  .object({
    name: z.string().min(1).optional(),
    wal: z
      .object({
        path: z.string().min(1).optional(),
        max_bytes: z.number().int().positive().optional().describe('while a sink fails, reading pauses once the WAL holds this many bytes (default 1 GiB)'),
      })
      .strict()
      .optional(),
    server: z
      .object({ port: z.number().int().min(0).max(65535).optional() })
      .strict()
      .optional(),
    infra_errors: z
      .object({
        max_backoff_ms: z.number().int().positive().optional().describe('while a disk is full or failing, the same batch is retried with backoff up to this wait (default 30000)'),
        give_up_after_seconds: z
          .number()
          .nonnegative()
          .optional()
          .describe('exit non-zero once an infrastructure failure has lasted this long, leaving everything unacked for the next start (default 0: wait until it is fixed)'),
      })
      .strict()
      .optional(),
    window_state: z
      .object({
        postgres: z.string().min(1).describe("a PostgreSQL URL: where the workers of a consumer group keep each partition's window state, so that it moves with the partition"),
        table: z.string().min(1).optional().describe('the table (default sluice_window_state; created when missing)'),
      })
      .strict()
      .optional()
      .describe("windowed models' state shared by several workers (docs/windows.md, several workers)"),
    node: z
      .object({
        max_heap_mb: z.number().int().min(64).optional().describe("the Node.js heap limit of `sluice run` in MiB (default: Node's own, about 4 GiB); sluice runs itself as a child with it"),
      })
      .strict()
      .optional(),
    duckdb: z
      .object({
        threads: z.number().int().positive().optional().describe('DuckDB threads (default: one per core but one)'),
        memory_limit: z.string().min(1).optional().describe("DuckDB memory limit, e.g. '2GB'"),
      })
      .strict()
      .optional(),
  })
  .strict();

const flushKeys = {
  max_file_bytes: z.number().int().positive().optional().describe('flush a model once its WAL holds this many bytes'),
  max_age_seconds: z.number().positive().optional().describe('flush a model once its oldest WAL row is this old'),
};

const windowSchema = z
  .object({
    lateness: durationSchema.optional().describe('allowed out-of-orderness: the watermark is the largest event time seen (per partition) less this (default 0)'),
    idle_timeout: durationSchema.optional().describe('a source partition with no message for this long stops holding the watermark back (default 60 seconds)'),
    late: z
      .enum(['drop', 'dlq', 'update', 'reopen'])
      .optional()
      .describe(
        'an event whose window was already emitted: drop it (counted), dead-letter it (default), or update the window (re-emitted with the next _revision; a session window also retracts, with _retracted, the sessions a late event merged away); a stream join: a row older than its watermark is dropped, dead-lettered, or (reopen) meets what the buffers still hold',
      ),
    allowed_lateness: durationSchema
      .optional()
      .describe(
        'with late: update, how long after its end a window can still be updated; with late: reopen (a stream join), how long past the watermark its buffers are kept for late rows (default 0)',
      ),
    ttl: durationSchema
      .optional()
      .describe(
        'a deduplicating model (QUALIFY row_number() = 1, DISTINCT ON): a row is dropped when a row of its key came before it with a time at most this much earlier; each key is kept this long past its latest time (required)',
      ),
    max_session_duration: durationSchema.optional().describe('session windows: sessions are cut at multiples of this duration (from the epoch), so none is longer'),
    max_groups_per_window: z.number().int().positive().optional().describe('the most groups one window may hold (default: no limit)'),
    on_max_groups: z.enum(['fail', 'dlq']).optional().describe('past max_groups_per_window: stop the run (default) or dead-letter the messages that would add a group'),
  })
  .strict();

const executorSchema = z
  .object({
    binary_path: z.string().min(1).describe('the program every task of the handler runs (from config only, never from a message); a task gives its arguments, stdin and env'),
    max_executors: z.number().int().positive().optional().describe('tasks running at once (default: the number of CPUs)'),
    task_timeout_seconds: z.number().positive().optional().describe('a task running longer is killed with its process group (default 60)'),
    window_size: z.number().int().positive().optional().describe('messages handed to arrange() at once (default 100)'),
    max_retries: z.number().int().min(0).optional().describe('how many times onError() may retry one task (default 3); past that its messages are dead-lettered'),
    max_output_bytes: z.number().int().positive().optional().describe("bytes of a task's stdout, and of its stderr, kept (default 1048576); the rest is dropped and the result says so"),
    env: z.record(z.string(), z.string()).optional().describe("added to every task's environment; never logged or shown"),
  })
  .strict();

export const modelsSchema = z
  .object({
    ...flushKeys,
    overrides: z
      .record(
        z.string(),
        z
          .object({
            ...flushKeys,
            sink: z
              .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
              .optional()
              .describe('the sink (or sinks) of this model'),
            sinks: z.array(z.string().min(1)).min(1).optional().describe('the sinks of this model; each gets every row'),
            description: z.string().optional().describe('what the model produces (shown by `sluice docs`)'),
            columns: z.array(columnDocSchema).optional().describe('documented columns: name and description'),
            contract: contractSchema.optional().describe('what the model may output beyond its declared columns: new_columns and type_changes, each evolve | freeze | discard_row | discard_value'),
            tests: z.array(modelTestSchema).optional().describe('model-level data tests: SQL expressions every row must satisfy'),
            window: windowSchema.optional().describe('a windowed model: watermark, late events and limits'),
            state_ttl: durationSchema
              .optional()
              .describe('a materialised view (GROUP BY without a window): a group with no new row for this long (wall clock) is let go; its next row starts it again (default: kept for ever)'),
            executor: executorSchema.optional().describe("a handler's subprocess pool (a handler with arrange()): the binary its tasks run, how many at once, their timeout"),
          })
          .strict(),
      )
      .optional(),
    references: z
      .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a plain identifier'), referenceSchema)
      .optional()
      .describe('reference tables for relationships tests, loaded into DuckDB at start'),
  })
  .strict();

export const DEFAULT_MAX_FILE_BYTES = 128 * 1024 * 1024;
export const DEFAULT_MAX_AGE_SECONDS = 300;
export const DEFAULT_PORT = 9400;
export const DEFAULT_WAL_MAX_BYTES = 1024 * 1024 * 1024;

export type ProjectConfig = z.output<typeof projectSchema>;
export type ModelsConfig = z.output<typeof modelsSchema>;
