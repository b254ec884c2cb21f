"""SIA DC-09: the standard IP path from a building to an alarm receiving centre (ARC).

`frame` builds and reads DC-09 frames (CRC-16/ARC, length, replies), `crypto` the AES-CBC block with the
DC-09 padding rules, `mapping` turns a normalised event into a DC-03 (SIA-DCS) or DC-05 (ADM-CID) message,
and `transmitter` sends messages one at a time over TCP or UDP with acknowledgement, retries and NULL
supervision. Nothing here knows the journal or MQTT: `gateway.delivery` drives a `Transmitter` per receiver.
"""
