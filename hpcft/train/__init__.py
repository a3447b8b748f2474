"""The training side: the only package that imports torch, transformers, peft, deepspeed, datasets.

Every rank runs ``python -m hpcft.train.main RUN``, which reads ``RUN/spec.yaml`` and nothing else.
"""
