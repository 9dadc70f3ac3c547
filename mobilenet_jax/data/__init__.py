"""Input pipelines: TFDS datasets, a folder of images and the offline digits set, as numpy batches.

`spec` (TensorFlow-free) says what is wanted; `sources` opens a dataset once per run (`protocol`:
what every source provides; `tfds_source`, `folder` with `image_check`, `digits`, and `in_memory`
for the last two); `preprocess` crops, resizes and normalises single images; `pipeline` batches,
shards, seeds and resumes. Only `spec` can be imported without TensorFlow.
"""
