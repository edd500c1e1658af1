"""Push and receive: a framed, versioned protocol over a byte stream (SSH or a pipe)."""
