"""Built-in adapters: generic codecs and signing schemes, registered through the
``igsp_gateway.adapters`` entry-point group like any third-party adapter."""
