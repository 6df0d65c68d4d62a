"""Operations: metrics, health, logs and redaction, the admin API and the dead-letter command."""
