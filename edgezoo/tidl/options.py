"""Codes TIDL's import configuration takes for what follows the network (`postProcType`)."""

POST_PROC_CLASSIFICATION = 1
POST_PROC_DETECTION = 2
POST_PROC_SEGMENTATION = 3
