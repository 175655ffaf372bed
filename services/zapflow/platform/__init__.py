"""The platform layer every service is built on: settings, connections, the bus, the catalogue, HTTP, the supervisor."""
