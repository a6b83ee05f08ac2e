"""Built-in tuneforge plugins. Each module is registered through the
``tuneforge.plugins`` entry-point group, exactly like a third-party plugin."""
