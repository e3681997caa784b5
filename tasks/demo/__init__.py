"""The demo: a teacher fine-tuned from the offline MiniLM on the offline tweet corpus, put
in the local checkpoint store, then a real run of the nightly DAG."""
