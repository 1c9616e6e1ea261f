"""The ``stereo-spot`` command line: ``main`` builds the app and the one-machine commands; ``models``, ``aws`` and
``ops`` are the command groups it registers (the model hub, the AWS account, the cluster operations)."""
