"""The production EventSink: durable journal, outbox and MQTT publisher to the meldkamer."""
