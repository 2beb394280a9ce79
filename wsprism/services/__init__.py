"""Built-in Ext Lane services (room, chat, sys); the Hot Lane relay (svc 1) is in the framer."""
