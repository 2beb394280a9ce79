"""Built-in Ext Lane services (room, chat, sys) and the Hot Lane relay."""
