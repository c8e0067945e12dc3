# The config module: schema defaults, the embedded demo, YAML round trips, --set overrides and
# one test per error class (exact one-line messages).
sr_unit_test(test_config SOURCES test_config.c LABELS config)
