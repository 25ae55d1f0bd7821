"""The reconciler: observe the machine, plan against the manifest, apply the plan.

Holds desired.py, observe.py, plan.py, apply.py, watch.py and supervisor.py
(the reconciler issue). Only observe and apply touch the world.
"""
