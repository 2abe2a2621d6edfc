"""The sinks of the infer loop that write results out: JSON Lines and the terminal table
(:mod:`.outputs`), annotated images and video (:mod:`.saver`), an MQTT broker (:mod:`.mqtt`, with
its URL and topic rules in :mod:`.topics`). Each is an :class:`emo.edge_runtime.pipeline.Sink`.
Import the module you need: ``mqtt`` needs the optional paho-mqtt, and nothing here is imported
by ``import emo.edge_runtime.sinks``."""
