"""The Kubernetes operator: kopf handlers that reconcile TrainingJobs into pods and recover
them when a pod is lost, reusing control/ (recovery decisions, chain master) and
runtime/manifests.py (the manifests). `trainthrough operator` runs it."""
