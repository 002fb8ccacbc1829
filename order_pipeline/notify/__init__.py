"""Messages to customers: today the tracking link each new order gets."""
