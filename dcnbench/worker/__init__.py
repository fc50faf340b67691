"""The one mechanism for backends that run out of process.

    protocol.py   the pipe protocol (numpy + stdlib only): length, JSON header, .npy arrays, no pickles
    main.py       the worker program, run in the backend's environment; loads one framework file
    client.py     dcnbench's side: WorkerEnv (where and how a worker runs), WorkerClient (deadlines,
                  restarts, clear errors), SelfTimed (samples timed inside the worker)
    bridge.py     one worker call as a torch op (autograd included)
    shared.py     the run's one worker per framework backend (MXNet, paddle)
    isolation.py  any in-process backend or --impl plugin run in a worker (torch_framework.py)

A framework with dependencies of its own (MXNet, paddle) declares a WorkerEnv with a hashed
requirements file and a framework file; `make <name>-env` builds its environment.
"""
