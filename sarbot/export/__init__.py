"""The export's format: its files (report, README, data.json, CSV), the zip and its
parts, and OpenPGP encryption. The package step puts them together."""
