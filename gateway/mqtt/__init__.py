"""MQTT plumbing shared by every component that speaks MQTT."""
