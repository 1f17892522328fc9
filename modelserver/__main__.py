from modelserver.cli import run

run()
