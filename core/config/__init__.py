"""What a contributor configures and keeps: settings, credentials (the OS keychain), history, autostart."""
