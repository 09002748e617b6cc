"""HTTP/1.1: the sans-I/O request parser (protocol), the asyncio connection that drives
it and owns "every request read gets one answer" (connection: Slot), prebuilt answers
(responses) and strict decoding of the small bodies clients send (bodies)."""
