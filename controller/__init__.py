"""The controller: protocol engine, session store, acquisition, binning, MQTT bus and the CLI."""
