"""Google Cloud stand-ins on 127.0.0.1 for the gcp-batch tests: a fake Batch v1 REST server whose controller
runs each task's ``gflow worker`` as a local process (``server.py``, ``controller.py``), and
``gcp-storage-emulator`` behind a counting, fault-injecting proxy (``storage.py``)."""
