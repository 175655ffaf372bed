"""The sandbox: a local stand-in for the WhatsApp Cloud API, with a web chat.

It plays Meta's part when zapflow runs offline (development, tests, demos):

- the Graph API's ``POST /{version}/{phone_number_id}/messages``, with Meta's token check,
  payload validation, WhatsApp's sending rules (the 24-hour window, the pair rate, marketing
  opt-outs, templates) and error bodies, answering with wamids;
- signed webhooks to the gateway: the status lifecycle of every accepted message
  (sent, delivered, read) and the customers' messages;
- a web chat at ``/`` where a person writes as a customer and sees the bot's replies live;
- test hooks under ``/sandbox/``: number registration, templates, what Meta knows of a customer,
  fault injection, recordings of every send and attempt, and raw inbound notifications.

Numbers come from BotTenant files and from ``POST /sandbox/numbers``. Everything else lives
in memory and is lost on restart, on purpose. ``zapflow.sandbox.app.create_app`` builds the
ASGI app and ``zapflow.sandbox.app.run`` serves it; ``SandboxSettings`` holds the options.
"""
