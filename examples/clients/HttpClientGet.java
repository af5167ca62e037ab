// Java's java.net.http.HttpClient: one request, and what the application gets back.
//
//   java HttpClientGet GET URL | java HttpClientGet POST URL BYTES   [--then URL2]
//
// Prints "HTTP <status>" for a response, or the exception (toString()) and each cause
// ("caused by: ..."), as a log line shows them; exits 1 then. --then URL2: once standard
// input is closed, the same request to URL2 with the same HttpClient (its pool of
// kept-alive connections); the first's result is printed as "first request: HTTP <status>".
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class HttpClientGet {
    public static void main(String[] args) throws Exception {
        int n = args.length;
        String[] urls = n >= 2 && args[n - 2].equals("--then") ? new String[] {args[1], args[n - 1]} : new String[] {args[1]};
        HttpRequest.BodyPublisher body = args[0].equals("POST")
                ? HttpRequest.BodyPublishers.ofByteArray(new byte[Integer.parseInt(args[2])])
                : HttpRequest.BodyPublishers.noBody();
        HttpClient client = HttpClient.newHttpClient();
        try {
            for (int i = 0; i < urls.length; i++) {
                if (i > 0) {
                    System.in.readAllBytes(); // the pause between the two requests
                }
                HttpRequest request = HttpRequest.newBuilder(URI.create(urls[i])).method(args[0], body).build();
                HttpResponse<Void> response = client.send(request, HttpResponse.BodyHandlers.discarding());
                System.out.println((i < urls.length - 1 ? "first request: " : "") + "HTTP " + response.statusCode());
            }
        } catch (Exception e) {
            System.out.println(e);
            for (Throwable cause = e.getCause(); cause != null; cause = cause.getCause()) {
                System.out.println("caused by: " + cause);
            }
            System.exit(1);
        }
    }
}
