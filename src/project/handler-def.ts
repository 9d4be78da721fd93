import type { MessageMeta } from '../connectors/types.js';

// What a handler is written against: a TypeScript (or JavaScript) module in a project's
// handlers/ directory, `export default defineHandler({...})`, is a step of the DAG beside the
// SQL models. It reads one relation (`incoming`, a source or a model), row by row, and what it
// returns is its own relation, which SQL models read with ref() and which goes to its sinks
// like a model's rows. The package's entry point (src/index.ts) exports these.

/** A schema a handler's input or output is checked against: a zod schema (anything with zod's safeParse). */
export interface HandlerSchema<T> {
  safeParse(value: unknown): { success: true; data: T } | { success: false; error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] } };
}

/** The relation a handler reads: `incoming`, a source, or a model's output. */
export type HandlerInput = { kind: 'incoming' } | { kind: 'source'; name: string } | { kind: 'ref'; name: string };

/** A model's output, as a handler's input: `from: ref('orders')`. */
export function ref(name: string): HandlerInput {
  return { kind: 'ref', name };
}

/** A source's messages, as a handler's input: `from: source('payments')`. */
export function source(name: string): HandlerInput {
  return { kind: 'source', name };
}

/** One row a handler is given, and the message it comes from. */
export interface HandlerMessage<In> {
  /** The row (checked against the handler's `input` schema when it has one, and as that schema parses it). */
  value: In;
  /** The source message's payload, as it arrived (text). */
  raw: string;
  /** The source message's metadata (topic, key, partition, offset, headers, timestamp), as its source gives them. */
  meta: MessageMeta;
  /** Where the message is in its source (file and line, partition and offset, stream id, ...): what the DLQ records. */
  position: Record<string, unknown>;
  /** The source the message came from. */
  source: string;
}

/** What a handler is given besides its rows. */
export interface HandlerContext {
  /** The handler's name (its file's). */
  name: string;
  /** Logs with the handler's name (and, per row, the message's position) attached. */
  log: {
    debug(msg: string, fields?: Record<string, unknown>): void;
    info(msg: string, fields?: Record<string, unknown>): void;
    warn(msg: string, fields?: Record<string, unknown>): void;
    error(msg: string, fields?: Record<string, unknown>): void;
  };
}

type Many<T> = T | T[] | null | undefined;

/** What a handler module defines (see defineHandler). */
export interface HandlerSpec<In, Out> {
  /** The relation it reads; `incoming` when not given (the project's single source). */
  from?: HandlerInput;
  /** Its input rows are checked against this (a zod schema); a row that fails sends its message to the DLQ with the schema's error. */
  input?: HandlerSchema<In>;
  /** Its output rows are checked against this; a row that fails sends the message it came from to the DLQ. */
  output?: HandlerSchema<Out>;
  /** Shown by `models list`, `docs` and lineage. */
  description?: string;
  /**
   * Called once per input row: returns the rows it makes of it (none, one or several), or a
   * promise of them. A throw sends the row's message to the DLQ with the error; the batch goes
   * on without it. Called again for the same message after a crash (at-least-once).
   */
  process(message: HandlerMessage<In>, ctx: HandlerContext): Many<Out> | Promise<Many<Out>>;
}

/** The mark defineHandler leaves, shared by every copy of this module (a handler may load its own copy). */
export const HANDLER_MARK = Symbol.for('sluice.handler');

export type Handler<In = Record<string, unknown>, Out = Record<string, unknown>> = HandlerSpec<In, Out> & { readonly [HANDLER_MARK]: true };

/** Defines a handler: `export default defineHandler({ from, input, output, process })` in handlers/<name>.ts. */
export function defineHandler<In = Record<string, unknown>, Out = Record<string, unknown>>(spec: HandlerSpec<In, Out>): Handler<In, Out> {
  return Object.freeze({ ...spec, [HANDLER_MARK]: true as const });
}

/** Why `value` (a handler module's default export) is not a handler; undefined when it is one. */
export function handlerProblem(value: unknown): string | undefined {
  if (!value || typeof value !== 'object' || !(HANDLER_MARK in value))
    return 'its default export is not a handler: write `export default defineHandler({ ... })` (import { defineHandler } from "sluice")';
  const h = value as Handler;
  if (typeof h.process !== 'function') return 'the handler has no process(message, ctx) function';
  for (const k of ['input', 'output'] as const) {
    if (h[k] !== undefined && typeof (h[k] as { safeParse?: unknown }).safeParse !== 'function') return `its ${k} is not a schema (a zod schema, with safeParse)`;
  }
  const f = h.from;
  if (f !== undefined) {
    const ok = f && typeof f === 'object' && (f.kind === 'incoming' || ((f.kind === 'ref' || f.kind === 'source') && typeof f.name === 'string' && f.name !== ''));
    if (!ok) return 'its `from` is not a relation: use ref("model") or source("name"), or leave it out for incoming';
  }
  return undefined;
}

/** A schema error as one line: each issue's path and message. */
export function schemaError(error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] }): string {
  return error.issues.map((i) => `${i.path.length ? `$.${i.path.map(String).join('.')}` : '$'}: ${i.message}`).join('; ');
}
