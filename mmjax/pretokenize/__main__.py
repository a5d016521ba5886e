from mmjax.cli import run
from mmjax.pretokenize.run import main

run(main, "python -m mmjax.pretokenize")
