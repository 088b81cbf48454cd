"""bayes-teach command line: thin click commands over ppl_models, eval and distill.

Run ``python cli.py --help`` for the commands, and ``python cli.py COMMAND --help`` for each one.  The commands
live in ``commands/``, one file per kind of work: ``explore.py`` (domains, simulate, posterior), ``evaluate.py``
(evaluate, plot), ``teach.py`` (make-data, train, distill) and ``models.py`` (convert-model); ``errors.py`` decides how a failure is shown.
"""
from __future__ import annotations

import click

from commands.common import checked_parameters
from commands.errors import FriendlyGroup
from commands.evaluate import evaluate, plot
from commands.explore import domains, posterior, simulate
from commands.models import convert_model
from commands.teach import distill, make_data, train


@click.group(cls=FriendlyGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug):
    """Teach language models to reason like Bayesians: domains, exact Bayesian assistants, scoring, distillation."""


for command in (domains, simulate, posterior, evaluate, plot, make_data, train, distill, convert_model):
    main.add_command(checked_parameters(command))


if __name__ == "__main__":
    main()
