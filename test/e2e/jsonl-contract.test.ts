import { localFileSink } from '../helpers/file-sink-contract.js';
import { sinkContract } from '../helpers/sink-contract.js';

// The sink contract for the jsonl sink on local disk (gzip-compressed, as the harder case).
sinkContract(localFileSink('jsonl', { compression: 'gzip' }));
