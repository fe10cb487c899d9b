"""Exports one level of a run as a plain Keras model and sparse / dense TFLite files.

  python -m lth_keras.export --run=outputs/transfer/RUN --level=3
  python -m lth_keras.export --run=outputs/tickets/RUN --level=5 --output_dir=/tmp/ticket5

The run is a transfer run (the fine-tuned target model of the level) or a
find_tickets run (θ_i of the level, with the source head). What is written, and
how it is checked, is in lth_keras/tflite_export.py. A thin shell over lth_keras.export()
(lth_keras/api.py); its flags are the Export settings (lth_keras/settings.py).
"""

import dataclasses

from lth_keras import cli, settings

settings.define_flags([settings.Export])


def main(argv):
    cli.no_arguments(argv)
    chosen, _ = settings.from_command_line(settings.EXPORT)
    from lth_keras import api, tflite_export

    options = dataclasses.asdict(chosen[settings.Export])
    output_dir = chosen[settings.Run].output_dir
    report = api.export(options.pop("run"), options.pop("level"), output_dir=output_dir,
                        **options)
    print(tflite_export.format_report(report), end="")
    print(f"artifacts: {report['output_dir']}")


if __name__ == "__main__":
    cli.run(main)
