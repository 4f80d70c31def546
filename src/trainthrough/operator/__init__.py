"""The Kubernetes operator: kopf handlers (handlers.py) that hand each TrainingJob to the
driver of the one recovery master (driving.py, control/master.py), which keeps the master's
state in the job's status and applies its actions to pods (runtime/pods.py).
`trainthrough operator` runs it."""
