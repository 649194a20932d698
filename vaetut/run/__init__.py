"""The run machinery: everything that trains a model for real rather than explains it.

    train.py        fit: the epoch loop, History, evaluate
    options.py      fit's options and data, checked in one place before training
    steps.py        the training step: eager, whole-step CUDA graph, data-parallel
    checkpoint.py   atomic writes, the writer's lock, checked loading
    resume.py       what defines a run; resuming it from its checkpoint
    state.py        the progress of the objects fit is given (saved, restored, or refused)
    distributed.py  torchrun's process group: join, agree, leave
    device.py       pick_device
    cli.py          `python -m vaetut train`

The teaching core (vaetut/*.py) never imports from here; this package imports the core.
"""
