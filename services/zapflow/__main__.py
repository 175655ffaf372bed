from zapflow.cli import app

app(prog_name="zapflow")
