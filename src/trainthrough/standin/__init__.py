"""The cluster stand-in: a Kubernetes API emulator (emulator.py, KMock with fixes) and a
process kubelet (kubelet.py) that runs each Pod as a local process at a loopback address
of its own, with a Job controller (jobs.py) and a Prometheus file_sd list of the pods'
metrics ports (targets.py); `StandInCluster` (cluster.py) starts them together and runs
the real operator against them. A test and demo harness like kind or envtest, not the
product's engine: on a real cluster the same operator runs against the real API server.
"""
