"""ernie-compress: make ERNIE models small and fast for deployment.

Every stage is a function from a checkpoint directory to a new checkpoint directory
(see ``checkpoint.py``); ``export`` turns a checkpoint into deployable files and
``runtime`` runs those files on a device.
"""

__version__ = "0.1.0"
