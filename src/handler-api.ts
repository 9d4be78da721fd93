// What a handler is written against: `import { defineHandler, ref, z } from 'sluice'`. A handler
// loaded by a project (src/project/handler-files.ts) gets this module for 'sluice': the handler's
// half of the package, without the engine.

export { z } from 'zod';
export type { MessageMeta } from './connectors/types.js';
export {
  defineHandler,
  periodic,
  ref,
  source,
  type ErrorAction,
  type ExecutorTuning,
  type HandlerMetrics,
  type MessageGroup,
  type Pending,
  type Periodic,
  type ReadyContext,
  type Task,
  type TaskError,
  type TaskResult,
  type TaskSpec,
  type Handler,
  type HandlerContext,
  type HandlerInput,
  type HandlerMessage,
  type HandlerSchema,
  type HandlerSpec,
} from './project/handler-def.js';
