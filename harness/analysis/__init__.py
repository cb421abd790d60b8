"""Pure analysis over a Recording: no processes, sockets, clock or plotting here."""
