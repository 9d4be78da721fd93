// sluice as a library: what a handler (handlers/<name>.ts in a project) is written against.
// `import { defineHandler, ref, z } from 'sluice'`: a handler loaded by `sluice run` gets this
// very module, whatever the project's own node_modules hold.

export { z } from 'zod';
export type { MessageMeta } from './connectors/types.js';
export { defineHandler, ref, source, type Handler, type HandlerContext, type HandlerInput, type HandlerMessage, type HandlerSchema, type HandlerSpec } from './project/handler-def.js';
