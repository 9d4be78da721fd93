import { localFileSink } from '../helpers/file-sink-contract.js';
import { sinkContract } from '../helpers/sink-contract.js';

// The sink contract for the parquet sink on local disk.
sinkContract(localFileSink('parquet'));
