"""End-to-end tests: real uvicorn servers on 127.0.0.1, real HTTP and WebSocket clients."""
