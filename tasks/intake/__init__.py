"""What comes in before any compute: checkpoints listed, fetched and verified from the
store (nothing in them is executed or unpickled; refusals are recorded), and the data set read,
split deterministically and validated with Great Expectations."""
