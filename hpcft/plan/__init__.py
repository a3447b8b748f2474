"""JobSpec → Plan, pure: everything a submission will do, decided before anything runs.

``pipeline`` is the planning sequence every command uses (load → ``--zero auto`` → backend →
inputs → plan); ``plan`` builds the ``Plan`` value; ``deepspeed`` the DeepSpeed config; ``memory``
the memory planner; ``requeue`` the after-job policy; ``resume`` the plan of a resumed run.
This package file imports nothing: the ranks import ``plan.deepspeed`` alone.
"""
