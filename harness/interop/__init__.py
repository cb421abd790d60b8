"""Other tools' formats: JMeter test plans (and, to come, result files)."""
