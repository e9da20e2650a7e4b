"""One module per IKEv2 exchange: the initiator's task object and the responder's handler."""
