from mmjax.cli import run
from mmjax.demo.run import main

if __name__ == "__main__":
    run(main, "python -m mmjax.demo")
