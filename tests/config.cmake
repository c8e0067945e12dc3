# The config module: schema defaults, the embedded demo, YAML round trips, --set overrides and
# one test per error class (exact one-line messages). The time limit is part of the test: 200 kB
# of nested brackets must be refused at once (the quadratic parse took about a minute), and a
# FIFO given as the config must be refused, not wait for a writer.
sr_unit_test(test_config SOURCES test_config.c LABELS config TIMEOUT 30)
