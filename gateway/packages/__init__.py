"""Job download packages: a job's inputs and outputs as one streamed ZIP."""
